"""The product's stages and what they share. Importing it first sets up the process's memory."""

from tasks.allocator import release_freed_memory

release_freed_memory()  # before polars is imported, for jemalloc's part (see tasks/allocator.py)
