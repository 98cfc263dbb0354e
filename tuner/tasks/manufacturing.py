"""manufacturing-triage: classify a quality inspector's note by defect class."""

from __future__ import annotations

from tuner.tasks._gen import LabelSpec, TaskSpec

__all__ = ["SPEC"]

_LABELS = (
    LabelSpec(
        "surface_scratch",
        "scratches, scuffs or abrasion marks on the surface",
        train=(
            "{part} has a {length} mm scratch on the {side} face.",
            "visible scuff marks on {part} after handling.",
            "fine scratches across the coating of {part}.",
            "abrasion marks near the edge of {part}, {side} side.",
            "{part}: linear scratch, cosmetic, found at station {station}.",
        ),
        test=(
            "light scoring lines on the finish of {part}, about {length} mm long.",
            "the {side} surface of {part} is marred by rubbing marks.",
        ),
    ),
    LabelSpec(
        "crack",
        "cracks or fractures in the material",
        train=(
            "hairline crack at the weld of {part}.",
            "{part} shows a {length} mm crack near the mounting hole.",
            "fracture line visible on {part} under dye penetrant.",
            "crack propagating from the corner of {part}, {side} side.",
            "{part} split along the seam at station {station}.",
        ),
        test=(
            "fissure running through the flange of {part}, roughly {length} mm.",
            "the casting of {part} has broken open near the boss.",
        ),
    ),
    LabelSpec(
        "dimensional",
        "a dimension, hole position or flatness out of tolerance",
        train=(
            "bore diameter of {part} is {length} microns over tolerance.",
            "{part} fails the flatness check on the {side} face.",
            "hole position on {part} out of spec by {length} mm.",
            "length of {part} below the lower limit at station {station}.",
            "thread pitch on {part} does not match the drawing.",
        ),
        test=(
            "CMM report: {part} outside the drawing limits by {length} mm.",
            "go/no-go gauge rejects the slot width of {part}.",
        ),
    ),
    LabelSpec(
        "contamination",
        "foreign material, oil, dust or residue on or in the part",
        train=(
            "oil residue on {part} after washing.",
            "metal chips stuck inside the bore of {part}.",
            "dust particles trapped under the paint of {part}.",
            "{part} has grease stains on the {side} side.",
            "foreign fibre embedded in {part} at station {station}.",
        ),
        test=(
            "{part} arrived with swarf and coolant film still on it.",
            "unknown debris found sealed into the coating of {part}.",
        ),
    ),
    LabelSpec(
        "discoloration",
        "colour, shade or finish differs from the standard",
        train=(
            "{part} colour does not match the master sample.",
            "yellowing on the {side} face of {part}.",
            "burn marks and dark spots on {part} after heat treatment.",
            "uneven anodising shade across {part}.",
            "{part} paint looks faded compared with batch {station}.",
        ),
        test=(
            "the tint of {part} is noticeably off versus the reference panel.",
            "blotchy brown patches on the finish of {part}.",
        ),
    ),
    LabelSpec(
        "assembly_error",
        "a missing, wrong or wrongly fitted component",
        train=(
            "screw missing on {part} at station {station}.",
            "{part} installed upside down.",
            "wrong gasket fitted on {part}.",
            "connector on {part} not fully seated.",
            "{part} assembled without the washer on the {side} side.",
        ),
        test=(
            "clip absent from {part}; operator skipped a step.",
            "{part} was mounted in reverse orientation on the sub-assembly.",
        ),
    ),
)

SPEC = TaskSpec(
    name="manufacturing-triage",
    title="inspection note",
    labels=_LABELS,
    slots={
        "part": (
            ("bracket A12", "housing H3", "shaft S-40", "cover plate", "gear G7", "flange F2"),
            ("valve body V9", "pump impeller", "rotor R5"),
        ),
        "length": (("2", "5", "0.5", "12", "20"), ("3", "8", "15")),
        "side": (("left", "right", "top", "bottom"), ("front", "rear")),
        "station": (("3", "7", "12", "QA-1"), ("5", "QA-4")),
    },
    openers=(("", "", "Lot 118:", "Shift B:", "Inspector note -"), ("", "Batch 902:")),
    closers=(("", "", "Hold for review.", "Photo attached."), ("", "Quarantined.")),
    lowercase_rate=0.3,
)
