"""The crawler's sources, registered once here: one class per kind of source (its name, how it is
detected, how it is built). The CLI's ``--source`` choices, the API's ``source_type`` and
auto-detection all read ``SOURCES``. Adding a source is a class and a line below
(DEVELOPERS.md, "Adding a crawler source").

Order is detection order: local targets are claimed by the first source whose ``claims`` says so;
a fetched web page by the first web source whose ``sniff`` does (the article last: any page).
"""

from .base import CrawlContext, Item, Source
from .folder import FolderSource
from .git import GitSource
from .linkedin import LinkedInExportSource
from .medium import MediumExportSource
from .office import DocxSource, PdfSource
from .substack import SubstackExportSource
from .web import ArticleSource, FeedSource, SitemapSource
from .x_archive import XArchiveSource

SOURCES: dict[str, type] = {cls.name: cls for cls in (
    GitSource, LinkedInExportSource, MediumExportSource, SubstackExportSource, XArchiveSource,  # archives
    PdfSource, DocxSource,  # documents, by their bytes (before the folder source takes any other file)
    FolderSource,  # local paths (git: also remotes ending in .git)
    SitemapSource, FeedSource, ArticleSource,  # web targets, recognised from their content
)}
SOURCE_TYPES = ("auto", *SOURCES)  # what --source and source_type accept
API_SOURCE_TYPES = ("auto", *(name for name, cls in SOURCES.items() if cls.over_api))

__all__ = ["API_SOURCE_TYPES", "SOURCES", "SOURCE_TYPES", "CrawlContext", "Item", "Source"]
