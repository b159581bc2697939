#!/usr/bin/env python
import sys

if __name__ == "__main__":
    from mailsite.startup import manage

    manage(sys.argv)
