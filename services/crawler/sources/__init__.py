"""One small crawler per kind of source, all behind the `Source` interface."""

from .base import Item, Source
from .folder import FolderSource
from .git import GitSource
from .linkedin import LinkedInExportSource
from .web import ArticleSource, FeedSource, SitemapSource

__all__ = [
           "ArticleSource",
           "FeedSource",
           "FolderSource",
           "GitSource",
           "Item",
           "LinkedInExportSource",
           "SitemapSource",
           "Source",
]
