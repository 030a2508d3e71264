"""Helpers shared by several test modules (servers, clients); never tests themselves."""
