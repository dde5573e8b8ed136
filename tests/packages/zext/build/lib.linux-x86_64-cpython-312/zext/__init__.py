from zext._zext import zlib_version

__all__ = ["zlib_version"]
