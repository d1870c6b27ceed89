"""supemb.train — see docs/DESIGN.md for the planned contents."""
