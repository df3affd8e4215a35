"""Media: the images and videos users give and get, read as a viewer shows them and written atomically."""
