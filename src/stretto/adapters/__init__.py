"""Bridges to diffusers: running diffusers' own caches on stretto's models, for comparison."""
