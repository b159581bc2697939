from mailsite.startup import wsgi_application

application = wsgi_application()
