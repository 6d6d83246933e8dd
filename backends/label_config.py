"""The Label Studio labeling config of al-loop projects, the one place naming its tags and labels.

A task shows one patch quicklook (``data.image``) under a line saying what its label will be used
for (``data.label_use``: validation, which the model never trains on, or training); experts paint
it with brushes (exact, pixel masks) and, optionally, draw polygons. Both controls offer the same three labels, mapped to the
:mod:`al_loop.classes` codes by :data:`LABEL_CODES`. There is no "glacier of unknown type" label:
an expert always says which glacier class a pixel is.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS

IMAGE_NAME = "image"  # the Image tag's name: the ``to_name`` of every result
IMAGE_DATA_KEY = "image"  # the task data field holding the quicklook URL
LABEL_USE_KEY = "label_use"  # the task data field saying whether the label will validate or train
BRUSH_NAME = "brush"  # the BrushLabels tag's name: ``from_name`` of brush results
POLYGON_NAME = "polygon"  # the PolygonLabels tag's name: ``from_name`` of polygon results
REGION_NAME = "region"  # the RectangleLabels tag of region queries: the box to label in
REGION_LABEL = "Label inside this box"
REGION_COLOUR = "#FFD400"

LABEL_CODES: dict[str, int] = {
    "Clean ice": CLEAN_ICE,
    "Debris-covered glacier": DEBRIS,
    "Background": BACKGROUND,
}
LABEL_NAMES: dict[int, str] = {code: name for name, code in LABEL_CODES.items()}

# The colours of al_loop.evaluation's example plots, so that figures and the labeling UI agree.
LABEL_COLOURS: dict[str, str] = {
    "Clean ice": "#66C2FF",
    "Debris-covered glacier": "#D95F02",
    "Background": "#8B7D6B",
}


def _labels_xml() -> str:
    return "\n".join(
        f"    <Label value={quoteattr(name)} background={quoteattr(LABEL_COLOURS[name])}/>"
        for name in LABEL_CODES
    )


def label_config(polygons: bool = False) -> str:
    """The labeling config XML: the image with BrushLabels, the region box, and PolygonLabels if
    ``polygons``."""
    parts = [
        "<View>",
        f'  <Header value="${LABEL_USE_KEY}" size="6"/>',
        f'  <Image name="{IMAGE_NAME}" value="${IMAGE_DATA_KEY}" zoom="true" zoomControl="true"/>',
        f'  <BrushLabels name="{BRUSH_NAME}" toName="{IMAGE_NAME}">',
        _labels_xml(),
        "  </BrushLabels>",
        f'  <RectangleLabels name="{REGION_NAME}" toName="{IMAGE_NAME}" strokeWidth="3" opacity="0.15">',
        f"    <Label value={quoteattr(REGION_LABEL)} background={quoteattr(REGION_COLOUR)}/>",
        "  </RectangleLabels>",
    ]
    if polygons:
        parts += [
            (
                f'  <PolygonLabels name="{POLYGON_NAME}" toName="{IMAGE_NAME}" strokeWidth="2"'
                ' pointSize="small" opacity="0.4">'
            ),
            _labels_xml(),
            "  </PolygonLabels>",
        ]
    parts.append("</View>")
    return "\n".join(parts) + "\n"
