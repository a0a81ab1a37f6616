"""Recipes: each reads top to bottom, connecting data -> model -> losses -> the shared loop."""
