"""Folder classification (`eluserve classify`): every image under files and folders, one row per file."""
