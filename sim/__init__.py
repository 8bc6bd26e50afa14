"""Simulated customers and experts, and the bundled demo company (Northwind Outfitters)."""
