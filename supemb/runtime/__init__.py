"""supemb.runtime — see docs/DESIGN.md for the planned contents."""
