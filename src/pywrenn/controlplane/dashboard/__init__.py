"""The dashboard: server-rendered pages at `/`, served by the control plane itself.

Owns: the pages (`pages.py`, Jinja2 templates in `templates/`, server-drawn bar charts
in `charts.py`), our own small script and style (`static/`), and serving the front-end
libraries `make install` put in `web/node_modules` (xterm.js, pinned by
`web/package-lock.json`) at `/static/vendor/`.
Every page reads through the same services as the API, with the `RequestContext` of the
person's session, so a page never shows what a key of their team could not see. Every
change a page makes goes through the API (`/api/v1/...`) with the CSRF header.
The one page beyond a team's reach is the operators' hosts page (`hostsview.py`, over
the services behind `GET /v1/hosts`).
Knows nothing of: the database's tables (services answer), how
the API checks its callers (people/auth.py does).
"""
