"""Helpers shared by the tests: constants, images, stores, folders, real server processes, PostgreSQL.

Fixtures live in tests/conftest.py; test modules import helpers from here, never from each other.
"""
