"""Module widget wiring shared by FemurUNet and FemurUNetTrain: parameter node binding and path fields."""


def pathTextLineEdit(pathLineEdit):
    """The QLineEdit inside a ctkPathLineEdit; connect to its ``textChanged(QString)``.

    The ctkPathLineEdit's own ``currentPathChanged`` is emitted only for text its validator accepts (built from the
    name filters; "" never passes), so clearing a field or typing a name without one of the suffixes would never
    reach the module.
    """
    return pathLineEdit.comboBox().lineEdit()


class ParameterNodeGui:
    """Binds a module's .ui widgets that have a SlicerParameterName to one parameter node at a time.

    Slicer 5.6/5.8's ``connectGui`` returns no tag, so ``disconnectGui`` cannot undo it and every ``enter()`` would
    add another set of connections. ``connectParametersToGui`` returns its tag on every Slicer version, and binding
    again to the parameter node already bound is skipped.
    """

    def __init__(self, ui) -> None:
        self._widgets = {}
        for widget in vars(ui).values():
            name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
            if name:
                self._widgets[name] = widget
        self._wrapper = None
        self._tag = None

    def bind(self, wrapper) -> None:
        """Bind the widgets to ``wrapper`` (a parameterNodeWrapper); None unbinds them."""
        if wrapper is not None and self._wrapper is not None and wrapper.parameterNode is self._wrapper.parameterNode:
            return
        self.unbind()
        if wrapper is not None:
            self._tag = wrapper.connectParametersToGui(self._widgets)
            self._wrapper = wrapper

    def unbind(self) -> None:
        if self._wrapper is not None:
            self._wrapper.disconnectGui(self._tag)
        self._wrapper, self._tag = None, None
