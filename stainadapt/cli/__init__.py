"""Typer command-line interface: one module per command; parsing only, no logic."""
