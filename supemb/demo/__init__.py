"""The supemb web demo (`supemb demo`): a Gradio app over the library's public API.

app.py builds and serves it, views.py draws what it shows, examples.py writes
its example inputs. Nothing is imported here, so `import supemb.demo` does not
load gradio; `supemb.demo.app` does.
"""
