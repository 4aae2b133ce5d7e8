"""What people read: JSON and Markdown reports, terminal tables, and plots.

Takes plain dicts and result objects from the stages below; imports no converter.
"""
