# The "Remove false positive" Segment Editor effect (SegmentEditorEffect.py), registered by
# AtlasSegModule.effects. Slicer loads the effect file as a module named after this folder, replacing any
# package of that name in sys.modules (Slicer 5.10+): import nothing from here; the effect's logic is
# AtlasSegModule.RemoveFalsePositiveLogic.
