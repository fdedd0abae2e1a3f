"""Model merging: a streaming engine, mergekit-compatible recipes, one class per method."""
from .engine import MergeStats, run_merge
from .methods import available_methods, get_method
from .recipe import Recipe, load_recipe, parse_recipe

__all__ = ["MergeStats", "Recipe", "available_methods", "get_method", "load_recipe", "parse_recipe", "run_merge"]
