"""`vp ui`: the web control page, an ASGI app over the same core the CLI uses.

Nothing outside this package imports it, and it is imported only by `vp ui`, so `vp CMD` and
`vp --help` never load starlette or uvicorn (the `ui` extra).
"""
