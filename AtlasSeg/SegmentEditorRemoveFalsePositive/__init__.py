"""The AtlasSeg Segment Editor effect "Remove false positive".

``registerEffects()`` is called by the AtlasSeg module on ``startupCompleted``. The effect class
(``SegmentEditorEffect.py``) needs the Slicer application; ``RemoveFalsePositiveLogic`` does not.
"""
import logging
import os

EFFECT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "SegmentEditorEffect.py")
EFFECT_NAME = "Remove false positive"


def registerEffects() -> bool:
    """Register the "Remove false positive" effect with Slicer's Segment Editor (once). Returns whether it is
    registered; logs why not (e.g. outside the Slicer application)."""
    try:
        import qSlicerSegmentationsEditorEffectsPythonQt as effects
        import slicer
    except ImportError as exc:
        logging.info("AtlasSeg: Segment Editor effects not registered (%s)", exc)
        return False
    factory = slicer.qSlicerSegmentEditorEffectFactory.instance()
    if any(effect.name == EFFECT_NAME for effect in factory.registeredEffects()):
        return True
    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource(EFFECT_SOURCE.replace("\\", "/"))
    instance.self().register()
    return True
