"""The supemb web demo (`supemb demo`): a Gradio app over the library; see app.py.

It lives beside the package, not in it: `supemb demo` loads it from the source
checkout (an editable install), under the module name `supemb_demo`.
"""
