"""The shapes model: procedural pictures of coloured shapes and a small SD model trained on them."""
