"""Presentation helpers for the dashboard: plain functions, no requests, no queries."""
