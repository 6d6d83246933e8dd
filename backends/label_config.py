"""The Label Studio labeling config of al-loop projects, the one place naming its tags and labels.

A task shows, under a line saying what its label will be used for (``data.label_use``) and one
about the patch (``data.about``: scene, date, path/row, place, round, why it was chosen):

* the false colour B5/B4/B2 (``data.image``; natural colour for a scene without B5), the view
  experts paint on, with brushes (exact, pixel masks) and, optionally, polygons;
* beside it, read-only views on the same pixel grid (:data:`al_loop.io.views.VIEWS`): natural
  colour, SWIR/thermal, terrain and a wider context. Label Studio 1.23 has no image layers and
  keeps regions on the image they were drawn on, so the views are separate images, not layers.

Labels: the three classes of :data:`LABEL_CODES`, and two that say "no label here"
(:data:`IGNORE_LABELS`: unsure, cloud or no data), stored as unlabeled pixels that loss and
metrics ignore. Unpainted pixels are background, but only in an annotation that says something:
an empty submission is nothing unless the expert ticks :data:`NO_GLACIER` ("no glacier here").
There is no "glacier of unknown type" label: an expert always says which glacier class a pixel is.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS
from al_loop.io.views import VIEWS

IMAGE_NAME = "image"  # the painted Image tag's name: the ``to_name`` of every result
IMAGE_DATA_KEY = "image"  # the task data field holding the painted view's URL
PAINTED_VIEW = "false_colour"
LABEL_USE_KEY = "label_use"  # the task data field saying whether the label will validate or train
ABOUT_KEY = "about"  # the task data field describing the patch and why it was chosen
TITLE_PREFIX = "title_"  # task data ``title_<view>``: a view's title (the contour interval, a fallback composite vary)
BRUSH_NAME = "brush"  # the BrushLabels tag's name: ``from_name`` of brush results
POLYGON_NAME = "polygon"  # the PolygonLabels tag's name: ``from_name`` of polygon results
REGION_NAME = "region"  # the RectangleLabels tag of region queries: the box to label in
REGION_LABEL = "Label inside this box"
REGION_COLOUR = "#FFD400"
VERDICT_NAME = "verdict"  # the Choices tag of a deliberate "nothing to paint" answer
NO_GLACIER = "No glacier in this patch"

LABEL_CODES: dict[str, int] = {
    "Clean ice": CLEAN_ICE,
    "Debris-covered glacier": DEBRIS,
    "Background": BACKGROUND,
}
LABEL_NAMES: dict[int, str] = {code: name for name, code in LABEL_CODES.items()}
IGNORE_LABELS: dict[str, str] = {"Unsure": "unsure", "Cloud / no data": "cloud"}
"""Labels that mark pixels the expert cannot tell, by the key they are counted under."""
ALL_LABELS = (*LABEL_CODES, *IGNORE_LABELS)

# The colours of al_loop.evaluation's example plots, so that figures and the labeling UI agree.
LABEL_COLOURS: dict[str, str] = {
    "Clean ice": "#66C2FF",
    "Debris-covered glacier": "#D95F02",
    "Background": "#8B7D6B",
    "Unsure": "#B07CFF",
    "Cloud / no data": "#F2F2F2",
}
# Keyboard shortcuts; Label Studio would otherwise number the labels of both tools alike.
_HOTKEYS = {"Clean ice": "1", "Debris-covered glacier": "2", "Background": "3", "Unsure": "4", "Cloud / no data": "5"}


def _labels_xml(hotkeys: bool) -> str:
    return "\n".join(
        f"      <Label value={quoteattr(name)} background={quoteattr(LABEL_COLOURS[name])}"
        + (f" hotkey={quoteattr(_HOTKEYS[name])}" if hotkeys else "") + "/>"
        for name in ALL_LABELS
    )


def title_key(view_key: str) -> str:
    """The task data field holding a view's title."""
    return TITLE_PREFIX + view_key


def label_config(polygons: bool = False) -> str:
    """The labeling config XML: the painted view with BrushLabels, the verdict, the region box,
    PolygonLabels if ``polygons``, and the reference views beside it."""
    parts = [
        "<View>",
        f'  <Header value="${LABEL_USE_KEY}" size="6"/>',
        f'  <Header value="${ABOUT_KEY}" size="6"/>',
        '  <View style="display:flex; gap:12px; align-items:flex-start">',
        '    <View style="flex:3; min-width:0">',
        f'    <Header value="${title_key(PAINTED_VIEW)}" size="6"/>',
        f'    <Image name="{IMAGE_NAME}" value="${IMAGE_DATA_KEY}" zoom="true" zoomControl="true"'
        ' brightnessControl="true" contrastControl="true"/>',
        f'    <BrushLabels name="{BRUSH_NAME}" toName="{IMAGE_NAME}">',
        _labels_xml(hotkeys=True),
        "    </BrushLabels>",
    ]
    if polygons:
        parts += [
            f'    <PolygonLabels name="{POLYGON_NAME}" toName="{IMAGE_NAME}" strokeWidth="2"'
            ' pointSize="small" opacity="0.4">',
            _labels_xml(hotkeys=False),
            "    </PolygonLabels>",
        ]
    parts += [
        f'    <RectangleLabels name="{REGION_NAME}" toName="{IMAGE_NAME}" strokeWidth="3" opacity="0.15">',
        f"      <Label value={quoteattr(REGION_LABEL)} background={quoteattr(REGION_COLOUR)}/>",
        "    </RectangleLabels>",
        f'    <Choices name="{VERDICT_NAME}" toName="{IMAGE_NAME}" choice="single" showInline="true">',
        f"      <Choice value={quoteattr(NO_GLACIER)}/>",
        "    </Choices>",
        "    </View>",
        '    <View style="flex:2; min-width:0; display:grid; grid-template-columns:1fr 1fr; gap:6px">',
    ]
    for view in VIEWS:
        if view.key == PAINTED_VIEW:
            continue
        parts += [
            "      <View>",
            f'        <Header value="${title_key(view.key)}" size="6"/>',
            f'        <Image name="{view.key}" value="${view.key}"/>',
            "      </View>",
        ]
    parts += ["    </View>", "  </View>", "</View>"]
    return "\n".join(parts) + "\n"


VIEW_DATA_KEYS = tuple(v.key for v in VIEWS if v.key != PAINTED_VIEW)
"""The task data fields of the reference views (one Image tag each, named after the field)."""
