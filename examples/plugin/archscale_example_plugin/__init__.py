"""An example archscale plugin: nothing here is imported until a recipe or `archscale list` uses its entries."""
