"""The lab's one error type: a clear sentence for the learner, not a traceback wall."""


class LabError(Exception):
    """A mistake the learner can fix (a wrong parameter, a missing file)."""

    def _render_traceback_(self):
        # IPython shows this instead of the full traceback.
        return [f"{type(self).__name__}: {self}"]
