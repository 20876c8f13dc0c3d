"""The FemurUNet module's settings (its parameter node) as the engine's segmentation options.

One mapping for everything that segments with the module's settings: the module's Segment button (widget and
logic) and the Segment Editor effect 'Femur U-Net'.
"""

# the engine's option names that segmentOptions fills (keywords of FemurUNetLib.mrml.segment_and_import and
# segment_oriented_image; all but ``model`` go on to FemurUNetLib.inference.segment_volume)
SEGMENT_OPTION_NAMES = ("model", "device", "batch_size", "threshold", "mirror", "keep_all_pieces")


def segmentOptions(parameterNode) -> dict:
    """Engine keyword arguments from a FemurUNetParameterNode.

    modelPath "" -> model None (the demo model); batchSize 0 -> None (automatic); useModelThreshold -> threshold
    None (the model's own), else the threshold slider; mirror -> also run each slice mirrored left-right;
    keepAllPieces -> keep labelled pieces detached from each femur (removed by default).
    """
    p = parameterNode
    return {"model": p.modelPath or None,
            "device": p.device,
            "batch_size": p.batchSize or None,
            "threshold": None if p.useModelThreshold else p.threshold,
            "mirror": bool(p.mirror),
            "keep_all_pieces": bool(p.keepAllPieces)}
