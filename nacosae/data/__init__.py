"""Control data: image folders and the preprocessing the explained models expect."""
