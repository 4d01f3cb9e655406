"""The API's views, one module per resource; ``sandboxes.api.urls`` maps them."""
