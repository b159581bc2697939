from rest_framework.pagination import PageNumberPagination


class Pagination(PageNumberPagination):
    """Pages of API_PAGE_SIZE; a client may ask for ?page_size= up to 500."""

    page_size_query_param = "page_size"
    max_page_size = 500
