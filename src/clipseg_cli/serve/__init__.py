"""``clipseg serve``: the model loaded once, masks over HTTP and in the browser.

`create_app` builds the app (`app`: CORS, then the token, size and time `guard`, then FastAPI);
`forms` reads form fields as strict UTF-8 and Accept's q-values; `MicroBatcher` runs concurrent
requests in one model call (`batching`); `library.run_job` is the one call into the library, in
memory (`Engine.encode`: the bytes ``clipseg segment`` writes, nothing on disk); `server` runs the
app on uvicorn with bounded heads and connections and a drain on SIGTERM; `ray` runs the same app as
Ray Serve replicas (``clipseg serve --ray``, ``serve run clipseg_cli.serve.ray:app``).
Needs the ``serve`` extra: ``pip install "clipseg-cli[serve]"`` (``serve-ray`` for `ray`).
"""
