"""Pictures of data and results: boxes, masks and labels drawn with PIL, image grids."""

from detlab.viz.draw import draw_boxes, draw_detections, image_grid, show_result

__all__ = ["draw_boxes", "draw_detections", "image_grid", "show_result"]
