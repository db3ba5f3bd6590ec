"""The web console: a thin, server-rendered shell over the SDK (:mod:`fedgov.client`) and the node code.

``fedgov console --kit KIT --coordinator ADDR`` serves it on 127.0.0.1 and
acts as the kit's person over mutual TLS; the role in the kit's certificate
decides which pages exist (docs/console.md).

Adding a page (the only supported way; CSRF, role checks and security
headers then apply to it without further code):

1. write ``fedgov/console/pages_<name>.py`` exporting ``PAGE = Page(...)``
   (:class:`fedgov.console.pages.Page`): its routes (:func:`~fedgov.console.pages.route`,
   each with the roles allowed), at most a few nav entries
   (:class:`~fedgov.console.pages.NavEntry`, same roles) and its interface
   text in English and Simplified Chinese (``messages={"en": {...}, "zh": {...}}``);
2. put its templates in ``fedgov/console/templates/`` (extend ``base.html``);
3. add the module's name to :data:`fedgov.console.app.PAGE_MODULES` (one line).

Handlers are plain functions ``handler(ctx: PageContext) -> Response`` run in
a worker thread (the SDK is blocking); ``ctx.render("x.html", **vars)`` renders
a template with the navigation, the CSRF token and ``t()`` (the catalogue).
"""
