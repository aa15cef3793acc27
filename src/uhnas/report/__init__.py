"""Figures and summaries of finished or running searches."""
