"""The chat page for people, at `/`: static files shipped in the package (no build step, no CDN).
The page itself is open; what it calls (/v1/...) needs a key like any other client."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

STATIC = Path(__file__).resolve().parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}
# Only these files are served: a name is looked up, never joined into a path.
FILES = {p.name: p for p in STATIC.iterdir() if p.suffix in TYPES} if STATIC.is_dir() else {}
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"}

router = APIRouter()


def _file(name: str):
    path = FILES.get(name)
    if path is None:
        return JSONResponse({"error": {"message": f"no file {name!r}", "code": 404}}, status_code=404)
    return FileResponse(path, media_type=TYPES[path.suffix], headers=HEADERS)


@router.get("/", include_in_schema=False)
async def index():
    return _file("index.html")


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str):
    return _file(name)
