"""The HTML report: a trace, a campaign or a policy as one self-contained page (docs/report.md).

``model`` turns records into the compact JSON model the page draws (no I/O);
``page`` puts the model, the page's own script and the vendored libraries
into one HTML file; ``serve`` streams a growing trace into the same page.
"""
