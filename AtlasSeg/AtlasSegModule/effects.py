"""Registering the AtlasSeg Segment Editor effect "Remove false positive".

``registerEffects()`` is called by the AtlasSeg module on ``startupCompleted``. The effect class
(``SegmentEditorRemoveFalsePositiveLib/SegmentEditorEffect.py``) needs the Slicer application;
``AtlasSegModule.RemoveFalsePositiveLogic`` does not.

The effect file sits in a ``...Lib`` folder that nothing imports as a package, as in Slicer's template
(``Utilities/Templates/Modules/ScriptedSegmentEditorEffect``): ``qSlicerSegmentEditorScriptedEffect::
setPythonSource`` names the effect's Python module after the file's *folder* and, from Slicer 5.10, replaces
``sys.modules[<folder>]`` with it, so a package of that name would be gone after registration.
"""
import logging
import os

EFFECT_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "SegmentEditorRemoveFalsePositiveLib", "SegmentEditorEffect.py")
EFFECT_NAME = "Remove false positive"


def registerEffects() -> bool:
    """Register the "Remove false positive" effect with Slicer's Segment Editor (once). Returns whether it is
    registered; logs why not (e.g. outside the Slicer application)."""
    try:
        # here: these exist only inside Slicer's application; outside it the effect is not registered
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
