"""The browser dashboard: HTML pages and their static assets, served by the API itself.

Pages (one HTML shell; ``static/app.js`` renders the page named by the path):
    ``/``                  jobs table (filter, auto-refresh, cancel)
    ``/ui/jobs/{job_id}``  one job: live NE charts from the SSE stream, per-pass table, spec
    ``/ui/compare``        test NE by pass of several jobs, Δ vs a baseline job
    ``/ui/submit``         submit a spec (YAML/JSON) with the API's validation errors inline
    ``/ui/studies``        studies table; ``/ui/studies/new`` plan and submit a study;
    ``/ui/studies/{id}``   one study, live: the answer per pass count (paired Δ vs the
                           baseline with 95% intervals), strata, strength curves, runs
                           (``static/studies.js``)

Assets are vendored under ``static/`` (uPlot, js-yaml; see ``static/vendor/README.md``),
so the dashboard works on machines without internet. The pages need no auth; they
ask for an API token in the browser and send it on every ``/v1`` call.

``main.py`` includes :data:`router`.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"
_QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"

_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# Used when examples/quickstart.yaml is not next to the package (an installed wheel).
DEFAULT_EXAMPLE_SPEC = """\
# A small job: synthetic click logs, 3 passes over day 0, test on day 1.
data:
  source: synthetic
  synthetic:
    examples_per_day: 20000
    num_users: 2000
    num_ads: 1000
  batch_size: 512
model:
  embedding_dim: 8
  hash_size: 20000
  dense_arch: [16, 8]
  over_arch: [16]
training:
  num_passes: 3
regularizers: []
#  - {type: sparse_l2, weight: 0.0001}
metrics:
  window_size: 4096
  report_every_steps: 5
"""

# The new-study form's example: the base job inline (a file name only works from the CLI).
EXAMPLE_STUDY = """\
# A small study: baseline + sparse L2 at two strengths + dropout, 2 seeds, 3 passes.
# Each run is an ordinary job; the answer is the paired difference with the baseline of
# the same seed, with a 95% t-interval over the seeds (see docs/studies.md).
name: small study
seeds: 2
passes: 3
base:
  data:
    synthetic: {examples_per_day: 20000, num_users: 2000, num_ads: 1000}
    batch_size: 512
  model: {embedding_dim: 8, hash_size: 20000, dense_arch: [16, 8], over_arch: [16]}
  scaling: {num_workers: 1}
  metrics: {window_size: 4096, report_every_steps: 5}
variants:
  - regularizers: [{type: sparse_l2, weight: [1.0e-4, 1.0e-3]}]
  - regularizers: [{type: dropout, p: 0.2}]
"""

router = APIRouter(include_in_schema=False)


def _shell(request: Request) -> HTMLResponse:
    root = (request.scope.get("root_path") or "").rstrip("/")
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{ROOT}}", html.escape(root, quote=True))
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    return _shell(request)


@router.get("/ui", response_class=HTMLResponse)
@router.get("/ui/jobs", response_class=HTMLResponse)
def ui_root(request: Request) -> RedirectResponse:
    root = (request.scope.get("root_path") or "").rstrip("/")
    return RedirectResponse(f"{root}/", status_code=307)


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, request: Request) -> HTMLResponse:
    return _shell(request)


@router.get("/ui/compare", response_class=HTMLResponse)
def compare_page(request: Request) -> HTMLResponse:
    return _shell(request)


@router.get("/ui/submit", response_class=HTMLResponse)
def submit_page(request: Request) -> HTMLResponse:
    return _shell(request)


@router.get("/ui/studies", response_class=HTMLResponse)
@router.get("/ui/studies/new", response_class=HTMLResponse)
def studies_page(request: Request) -> HTMLResponse:
    return _shell(request)


@router.get("/ui/studies/{study_id}", response_class=HTMLResponse)
def study_page(study_id: str, request: Request) -> HTMLResponse:
    return _shell(request)


@router.get("/ui/example-study", response_class=PlainTextResponse)
def example_study() -> PlainTextResponse:
    """The study the new-study form is prefilled with (small, base spec inline)."""
    return PlainTextResponse(
        EXAMPLE_STUDY, media_type="text/yaml; charset=utf-8", headers={"Cache-Control": "no-cache"}
    )


@router.get("/ui/example-spec", response_class=PlainTextResponse)
def example_spec() -> PlainTextResponse:
    """The spec the submit form is prefilled with: the repo's quickstart if present."""
    try:
        text = _QUICKSTART.read_text(encoding="utf-8")
    except OSError:
        text = DEFAULT_EXAMPLE_SPEC
    return PlainTextResponse(
        text, media_type="text/yaml; charset=utf-8", headers={"Cache-Control": "no-cache"}
    )


@router.api_route("/static/{path:path}", methods=["GET", "HEAD"])
def static_file(path: str) -> FileResponse:
    target = (STATIC_DIR / path).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file() or target.name == "index.html":
        raise HTTPException(status_code=404, detail="not found")
    media_type = _MEDIA_TYPES.get(target.suffix.lower(), "application/octet-stream")
    # Vendored files never change under a name (the version is in their README); our own
    # files change with the package, so the browser revalidates them.
    cache = "public, max-age=86400" if target.parent.name == "vendor" else "no-cache"
    return FileResponse(target, media_type=media_type, headers={"Cache-Control": cache})
