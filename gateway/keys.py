"""Keys of the state an application carries (settings, backend clients).

Kept apart from `app.py` so that handlers can read the state without importing the module
that imports them.
"""

from __future__ import annotations

from aiohttp import web

from artifactstore.config import Settings
from artifactstore.upload_ids import UploadIds
from gateway.clients import Clients
from gateway.localfiles import BlobFiles
from gateway.localuploads import UploadFiles
from gateway.manifest_cache import ManifestCache

SETTINGS = web.AppKey("settings", Settings)
CLIENTS = web.AppKey("clients", Clients)
BLOB_FILES = web.AppKey("blob_files", BlobFiles)
UPLOAD_FILES = web.AppKey("upload_files", UploadFiles)
MANIFEST_CACHE = web.AppKey("manifest_cache", ManifestCache)
UPLOAD_IDS = web.AppKey("upload_ids", UploadIds)


def clients(request: web.Request) -> Clients:
    """The backend clients of the application serving `request`."""
    return request.app[CLIENTS]


def blob_files(request: web.Request) -> BlobFiles:
    """Where the application serving `request` finds blob_svc's files."""
    return request.app[BLOB_FILES]


def upload_files(request: web.Request) -> UploadFiles:
    """How the application serving `request` appends to blob_svc's session files."""
    return request.app[UPLOAD_FILES]


def settings(request: web.Request) -> Settings:
    """The settings of the application serving `request`."""
    return request.app[SETTINGS]


def manifest_cache(request: web.Request) -> ManifestCache:
    """The manifest cache of the application serving `request`."""
    return request.app[MANIFEST_CACHE]


def upload_ids(request: web.Request) -> UploadIds:
    """How the application serving `request` issues and checks upload ids."""
    return request.app[UPLOAD_IDS]
