"""A stand-in for the parts of the Slicer application that FemurUNet.py and FemurUNetTrain.py use, so that their
widgets, logic and self-tests run here: Qt/CTK widgets built from the modules' own .ui files, the
ScriptedLoadableModule base classes, the parameter node wrapper and the message boxes of ``slicer.util``. MRML is
real (slicer-core). What is imitated follows the Slicer, CTK and PythonQt sources:

- ``ctkPathLineEdit`` (CTK Libs/Widgets/ctkPathLineEdit.cpp): the text lives in the QLineEdit of an editable combo
  box (``comboBox().lineEdit()``), whose ``textChanged`` fires on every edit; ``currentPathChanged`` is emitted only
  when that text passes the validator built by ``ctk::nameFiltersToRegExp`` (".+" without name filters, so never for
  an empty field); ``addCurrentPathToHistory()`` writes the history under ``ctkPathLineEdit/<settingKey>``.
- ``parameterNodeWrapper`` (Slicer Base/Python/slicer/parameterNodeWrapper/wrapper.py): ``connectGui`` returns no
  tag in Slicer 5.6/5.8 (``CONNECT_GUI_RETURNS_TAG = False``), ``connectParametersToGui`` returns one, and
  ``disconnectGui(tag)`` removes only the connections of that tag.
- PythonQt calls a slot with as many of the signal's arguments as the slot takes.
- Slicer puts each scripted module's folder on ``sys.path`` (FemurUNet/: FemurUNetLib, FemurUNetSlicerLib) and makes
  a Segment Editor effect from its file with a ``qSlicerSegmentEditorScriptedEffect`` (``ScriptedEffect`` here:
  its parameters, source image, undo states and the labelmaps written into the selected segment).

Not a test file: the tests import it (``fake_slicer.install(monkeypatch)``); a subprocess can call ``install()``.
"""
from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import types
import typing
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_FILES = {"FemurUNet": REPO / "FemurUNet" / "FemurUNet.py",
                "FemurUNetTrain": REPO / "FemurUNetTrain" / "FemurUNetTrain.py"}
MODULE_FOLDER = REPO / "FemurUNet"   # on sys.path in Slicer: FemurUNetLib and FemurUNetSlicerLib import from it
EFFECT_FILE = MODULE_FOLDER / "SegmentEditorFemurUNetLib" / "SegmentEditorEffect.py"
PARAMETER_NAME_PROPERTY = "SlicerParameterName"


# --- Qt objects -------------------------------------------------------------------------------------------------
def _signal_name(signature: str) -> str:
    return signature.split("(")[0]


def _call_slot(slot, args):
    """Call like PythonQt: with as many of the signal's arguments as the slot accepts."""
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return slot(*args)
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return slot(*args)
    count = sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    return slot(*args[:count])


class QObject:
    def __init__(self, name: str = "", properties: dict | None = None):
        self.name = self.objectName = name
        self._dynamic = dict(properties or {})
        self._slots: dict = {}
        self._blocked = False

    def connect(self, signature: str, slot) -> None:
        self._slots.setdefault(_signal_name(signature), []).append(slot)

    def disconnect(self, signature: str, slot) -> None:
        self._slots.get(_signal_name(signature), []).remove(slot)

    def emit(self, signal: str, *args) -> None:
        if not self._blocked:
            for slot in list(self._slots.get(signal, [])):
                _call_slot(slot, args)

    def blockSignals(self, block: bool) -> bool:
        was, self._blocked = self._blocked, bool(block)
        return was

    def property(self, name: str):
        return self._dynamic.get(name)

    def setProperty(self, name: str, value) -> None:
        self._dynamic[name] = value

    def slots(self, signal: str) -> list:
        return list(self._slots.get(signal, []))


class QWidget(QObject):
    """A widget from a .ui file: the properties the modules set are plain attributes."""

    def __init__(self, cls: str = "QWidget", name: str = "", properties: dict | None = None):
        super().__init__(name, {k: v for k, v in (properties or {}).items() if k == PARAMETER_NAME_PROPERTY})
        self.className = cls
        self.enabled, self.visible, self.toolTip, self.text = True, True, "", ""
        self.value, self.maximum, self.checked = 0, 100, False
        for key in ("enabled", "visible", "toolTip", "text", "value", "maximum", "checked"):
            if key in (properties or {}):
                setattr(self, key, properties[key])
        self.children: list = []
        self.mrmlScene = None

    def hide(self):
        self.visible = False

    def show(self):
        self.visible = True

    def setEnabled(self, enabled):
        self.enabled = bool(enabled)

    def setVisible(self, visible):
        self.visible = bool(visible)

    def setMRMLScene(self, scene) -> None:
        self.mrmlScene = scene
        for child in self.children:
            child.mrmlScene = scene

    def click(self) -> None:
        """The user clicks the button."""
        self.emit("clicked", False)


class QLineEdit(QObject):
    def __init__(self):
        super().__init__()
        self._text = ""
        self.validator = None   # a regular expression the whole text must match (QRegExpValidator)

    @property
    def text(self) -> str:
        return self._text

    def setText(self, text: str) -> None:
        if text != self._text:
            self._text = text
            self.emit("textChanged", text)

    def hasAcceptableInput(self) -> bool:
        return self.validator is None or re.fullmatch(self.validator, self._text) is not None


class QComboBox(QObject):
    def __init__(self):
        super().__init__()
        self._lineEdit = QLineEdit()
        self.items: list = []

    def lineEdit(self) -> QLineEdit:
        return self._lineEdit

    def count(self) -> int:
        return len(self.items)

    def addItem(self, text: str) -> None:
        self.items.append(text)

    def insertItem(self, index: int, text: str) -> None:
        self.items.insert(index, text)

    def removeItem(self, index: int) -> None:
        del self.items[index]

    def findText(self, text: str) -> int:
        return self.items.index(text) if text in self.items else -1

    def setCurrentIndex(self, index: int) -> None:
        if 0 <= index < len(self.items):
            self._lineEdit.setText(self.items[index])

    def clear(self) -> None:
        self.items = []


def _name_filter_extensions(name_filter: str) -> list:
    match = re.fullmatch(r"(.*)\(([a-zA-Z0-9_.*? +;#\-\[\]@{}/!<>$%&=^~:|]*)\)", name_filter)
    return (match.group(2) if match else name_filter).split()


def name_filters_to_regexp(name_filters) -> str:
    """ctk::nameFiltersToRegExp: '*.pt' -> '.*\\.pt?$' (sic), filters without an extension (like '*') dropped."""
    parts = []
    for name_filter in name_filters or []:
        for extension in _name_filter_extensions(name_filter):
            match = re.search(r"\*\.(\w+)", extension)
            if match:
                parts.append(r".*\." + match.group(1) + "?$")
    return "(" + "|".join(parts) + ")" if parts else ".+"


class ctkPathLineEdit(QWidget):
    def __init__(self, cls: str, name: str, properties: dict, settings: dict):
        super().__init__(cls, name, properties)
        self.nameFilters = list(properties.get("nameFilters") or [])
        self.settingKey = properties.get("settingKey") or ""
        self._settings = settings
        self._comboBox = QComboBox()
        self._lineEdit = self._comboBox.lineEdit()
        self._lineEdit.validator = name_filters_to_regexp(self.nameFilters)
        self._hasValidInput = False
        self._lineEdit.connect("textChanged(QString)", self._updateHasValidInput)
        self._retrieveHistory()

    def comboBox(self) -> QComboBox:
        return self._comboBox

    @property
    def currentPath(self) -> str:
        return self._lineEdit.text

    @currentPath.setter
    def currentPath(self, path: str) -> None:
        self._lineEdit.setText(path)

    def setCurrentPath(self, path: str) -> None:
        self.currentPath = path

    def _updateHasValidInput(self, text) -> None:
        old, self._hasValidInput = self._hasValidInput, self._lineEdit.hasAcceptableInput()
        if self._hasValidInput:
            self.emit("currentPathChanged", self.currentPath)
        if self._hasValidInput != old:
            self.emit("validInputChanged", self._hasValidInput)

    def _key(self) -> str:
        return "ctkPathLineEdit/" + (self.settingKey or self.objectName)

    def _retrieveHistory(self) -> None:
        for path in self._settings.get(self._key(), [])[:5]:
            self._comboBox.addItem(path)

    def addCurrentPathToHistory(self) -> None:
        path = self.currentPath
        if not path:
            return
        history = [p for p in self._settings.get(self._key(), []) if p != path]
        self._settings[self._key()] = [path] + history
        if self._comboBox.findText(path) >= 0:
            self._comboBox.removeItem(self._comboBox.findText(path))
        while self._comboBox.count() >= 5:
            self._comboBox.removeItem(self._comboBox.count() - 1)
        self._comboBox.insertItem(0, path)
        self._comboBox.setCurrentIndex(0)

    # what a user does
    def type(self, text: str) -> None:
        """The user edits the field until it holds ``text`` ("" clears it)."""
        self._lineEdit.setText(text)

    def browse(self, path: str) -> None:
        """The user picks ``path`` in the file dialog."""
        self.setCurrentPath(path)


class qMRMLNodeComboBox(QWidget):
    def __init__(self, *args):
        super().__init__(*args)
        self._node = None

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        self._node = node
        self.emit("currentNodeChanged", node)


class qMRMLSegmentSelectorWidget(qMRMLNodeComboBox):
    def __init__(self, *args):
        super().__init__(*args)
        self.segmentIds: list = []

    def selectedSegmentIDs(self) -> list:
        return list(self.segmentIds)

    def setSelectedSegmentIDs(self, ids) -> None:
        self.segmentIds = list(ids)


class QTableWidgetItem:
    def __init__(self, text: str = ""):
        self._text = text

    def text(self) -> str:
        return self._text


class QTableWidget(QWidget):
    def __init__(self, *args):
        super().__init__(*args)
        self.rows: dict = {}
        self.rowCount = 0
        self.selectedRowNumbers: list = []

    def setColumnCount(self, count) -> None:
        self.columnCount = count

    def setHorizontalHeaderLabels(self, labels) -> None:
        self.headerLabels = list(labels)

    def horizontalHeader(self):
        return types.SimpleNamespace(setStretchLastSection=lambda stretch: None)

    def setRowCount(self, count) -> None:
        self.rowCount = count
        self.rows = {k: v for k, v in self.rows.items() if k[0] < count}

    def setItem(self, row, column, item) -> None:
        self.rows[row, column] = item

    def item(self, row, column):
        return self.rows.get((row, column))

    def selectionModel(self):
        rows = [types.SimpleNamespace(row=lambda r=r: r) for r in self.selectedRowNumbers]
        return types.SimpleNamespace(selectedRows=lambda: rows)


class QSettings:
    """qt.QSettings() over the application's settings (a dict): value(key, default) and setValue(key, value)."""

    def __init__(self, store: dict):
        self._store = store

    def value(self, key, default=None):
        return self._store.get(key, default)

    def setValue(self, key, value) -> None:
        self._store[key] = value


class QPlainTextEdit(QWidget):
    def __init__(self, *args):
        super().__init__(*args)
        self.plainText = ""

    def clear(self) -> None:
        self.plainText = ""

    def appendPlainText(self, text) -> None:
        self.plainText += text + "\n"


WIDGET_CLASSES = {"qMRMLNodeComboBox": qMRMLNodeComboBox, "qMRMLSegmentSelectorWidget": qMRMLSegmentSelectorWidget,
                  "QTableWidget": QTableWidget, "QPlainTextEdit": QPlainTextEdit}
# the signal a parameterNodeWrapper GUI connector listens to, by widget class
CONNECTOR_SIGNALS = {"QSpinBox": "valueChanged", "QDoubleSpinBox": "valueChanged", "ctkSliderWidget": "valueChanged",
                     "QCheckBox": "toggled", "QComboBox": "currentIndexChanged",
                     "qMRMLNodeComboBox": "currentNodeChanged"}


def _ui_property(element):
    child = list(element)[0]
    if child.tag == "stringlist":
        return [s.text or "" for s in child.findall("string")]
    if child.tag == "bool":
        return child.text == "true"
    if child.tag == "number":
        return int(child.text)
    if child.tag == "double":
        return float(child.text)
    return child.text if child.tag in ("string", "set", "enum") else None


class FakeQt:
    """The ``qt`` module."""

    def __init__(self, app):
        self._app = app
        self.Qt = types.SimpleNamespace(WaitCursor=3)
        self.QWidget, self.QLineEdit, self.QComboBox, self.QTableWidgetItem = QWidget, QLineEdit, QComboBox, QTableWidgetItem
        self.QApplication = types.SimpleNamespace(setOverrideCursor=lambda cursor: None,
                                                  restoreOverrideCursor=lambda: None)
        self.QFileDialog = types.SimpleNamespace(getOpenFileName=lambda *args: app.file_dialog_answer)
        self.QSettings = lambda: QSettings(app.settings)

    @staticmethod
    def QTimer():
        timer = QObject()
        timer.interval, timer.active = 0, False
        timer.setInterval = lambda ms: setattr(timer, "interval", ms)
        timer.start = lambda *args: setattr(timer, "active", True)
        timer.stop = lambda: setattr(timer, "active", False)
        timer.isActive = lambda: timer.active
        return timer

    def __getattr__(self, name):
        raise AttributeError(f"the fake qt module has no {name!r}: add it to Testing/fake_slicer.py")


# --- parameter node wrapper ---------------------------------------------------------------------------------------
CONNECT_GUI_RETURNS_TAG = False   # Slicer 5.6 and 5.8: connectGui returns None


class Choice:
    def __init__(self, choices):
        self.choices = tuple(choices)


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


def _is_node_type(cls) -> bool:
    import slicer
    return isinstance(cls, type) and issubclass(cls, slicer.vtkMRMLNode)


def parameterNodeWrapper(cls):
    """Typed properties stored in the vtkMRMLScriptedModuleNode (real MRML), like Slicer's wrapper."""
    fields = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        base, extras = hint, ()
        if typing.get_origin(hint) is typing.Annotated:
            base, *extras = typing.get_args(hint)
        default = cls.__dict__.get(name, None if _is_node_type(base) else base())
        fields[name] = (base, tuple(extras), default)
        setattr(cls, name, property(lambda self, n=name: self.getValue(n), lambda self, v, n=name: self.setValue(n, v)))

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        self._guis, self._nextTag = {}, 0
        for name, (base, _, default) in fields.items():
            if not _is_node_type(base) and name not in parameterNode.GetParameterNames():
                parameterNode.SetParameter(name, str(default))

    def getValue(self, name):
        base = fields[name][0]
        if _is_node_type(base):
            return self.parameterNode.GetNodeReference(name)
        text = self.parameterNode.GetParameter(name)
        return text == "True" if base is bool else base(text)

    def setValue(self, name, value):
        base, extras, _ = fields[name]
        if _is_node_type(base):
            self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            return
        if not isinstance(value, base) and not (base is float and isinstance(value, int)):
            raise TypeError(f"{name}: expected {base.__name__}, got {type(value).__name__}")
        for extra in extras:
            if isinstance(extra, Choice) and value not in extra.choices:
                raise ValueError(f"{name}: {value!r} is not one of {extra.choices}")
            if isinstance(extra, WithinRange) and not extra.minimum <= value <= extra.maximum:
                raise ValueError(f"{name}: {value!r} is outside [{extra.minimum}, {extra.maximum}]")
        self.parameterNode.SetParameter(name, repr(value) if base is float else str(value))

    def connectParametersToGui(self, mapping):
        tag, self._nextTag = self._nextTag, self._nextTag + 1
        connections = []
        for name, widget in mapping.items():
            if name not in fields:
                raise ValueError(f"Cannot find a param with the given name: {name}")
            signal = CONNECTOR_SIGNALS[widget.className]

            def connector(*args, _name=name):
                pass   # the real connector writes the widget's value into the parameter
            connector.parameter_node_connector = True
            widget.connect(signal, connector)
            connections.append((widget, signal, connector))
        self._guis[tag] = connections
        return tag

    def connectGui(self, gui):
        mapping = {w.property(PARAMETER_NAME_PROPERTY): w for w in vars(gui).values()
                   if w.property(PARAMETER_NAME_PROPERTY)}
        tag = self.connectParametersToGui(mapping)
        return tag if CONNECT_GUI_RETURNS_TAG else None

    def disconnectGui(self, tag):
        for widget, signal, connector in self._guis.pop(tag, []):
            widget.disconnect(signal, connector)

    cls.allParameters = fields
    cls.__init__, cls.getValue, cls.setValue = __init__, getValue, setValue
    cls.connectParametersToGui, cls.connectGui, cls.disconnectGui = connectParametersToGui, connectGui, disconnectGui
    cls.AddObserver = lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback, priority)
    cls.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
    cls.Modified = lambda self: self.parameterNode.Modified()
    cls.StartModify = lambda self: self.parameterNode.StartModify()
    cls.EndModify = lambda self, wasModified: self.parameterNode.EndModify(wasModified)
    return cls


def parameter_node_connections(ui) -> int:
    """How many parameter node GUI connections the widgets of ``ui`` have now."""
    return sum(1 for widget in vars(ui).values() if isinstance(widget, QObject)
               for slots in widget._slots.values() for slot in slots
               if getattr(slot, "parameter_node_connector", False))


# --- ScriptedLoadableModule ---------------------------------------------------------------------------------------
class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else types.SimpleNamespace(isEntered=True)
        self.moduleName = type(self).__name__[:-len("Widget")]

    def setup(self):
        self.layout = types.SimpleNamespace(widgets=[])
        self.layout.addWidget = self.layout.widgets.append

    def resourcePath(self, filename):
        return str(Path(sys.modules[type(self).__module__].__file__).parent / "Resources" / filename)


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__[:-len("Logic")]

    def getParameterNode(self):
        import slicer
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetModuleName(self.moduleName)
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=1000):
        print(message)


# --- Segment Editor -----------------------------------------------------------------------------------------------
class AbstractScriptedSegmentEditorEffect:
    """SegmentEditorEffects.AbstractScriptedSegmentEditorEffect: keeps the scripted effect."""

    def __init__(self, scriptedEffect):
        self.scriptedEffect = scriptedEffect


class ScriptedEffect:
    """The qSlicerSegmentEditorScriptedEffect an effect is given, with what the tests look at."""

    def __init__(self):
        self.parameters: dict = {}
        self.sourceImage = None          # what sourceVolumeImageData() returns
        self.undoStates = 0
        self.modifications: list = []    # (mask, mode) of each modifySelectedSegmentByLabelmap call
        self.events: list = []           # "undo" and "modify", in the order the effect called them

    def parameter(self, name):
        return self.parameters.get(name, "")

    def setParameter(self, name, value):
        self.parameters[name] = value

    def setParameterDefault(self, name, value):
        self.parameters.setdefault(name, value)

    def sourceVolumeImageData(self):
        return self.sourceImage

    def saveStateForUndo(self):
        self.undoStates += 1
        self.events.append("undo")

    def modifySelectedSegmentByLabelmap(self, mask, mode):
        self.modifications.append((mask, mode))
        self.events.append("modify")


class ProgressDialog:
    """What slicer.util.createProgressDialog returns (a QProgressDialog)."""

    def __init__(self, parent=None, value=0, maximum=100, labelText="", windowTitle="Processing...", **kwargs):
        self.value, self.maximum, self.labelText = value, maximum, labelText
        self.wasCanceled, self.closed = False, False

    def close(self):
        self.closed = True


# --- the application ----------------------------------------------------------------------------------------------
class FakeApp:
    """``slicer.app`` plus what the tests look at: message boxes shown, pip calls, settings (QSettings)."""

    def __init__(self):
        import slicer
        self.mrmlScene = slicer.vtkMRMLScene()
        self.settings: dict = {}
        self.confirm_answer = False     # what the user answers to confirmOkCancelDisplay
        self.file_dialog_answer = ""
        self.confirmations: list = []
        self.errors: list = []
        self.warnings: list = []
        self.charts_shown: list = []
        self.progress_dialogs: list = []
        self.qt = FakeQt(self)

    # slicer.app
    def connect(self, signal, slot):
        pass

    def processEvents(self):
        pass

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass

    def testingEnabled(self):
        return False

    def commandOptions(self):
        return types.SimpleNamespace(testingEnabled=False)

    def layoutManager(self):
        return None

    # slicer.util
    def loadUI(self, path):
        root_element = ET.parse(path).getroot().find("widget")
        root = QWidget(root_element.get("class"), root_element.get("name"))
        for element in root_element.iter("widget"):
            if element is root_element:
                continue
            cls, name = element.get("class"), element.get("name")
            properties = {p.get("name"): _ui_property(p) for p in element.findall("property")}
            if cls == "ctkPathLineEdit":
                widget = ctkPathLineEdit(cls, name, properties, self.settings)
            else:
                widget = WIDGET_CLASSES.get(cls, QWidget)(cls, name, properties)
            root.children.append(widget)
        return root

    @staticmethod
    def childWidgetVariables(widget):
        ui = type("", (), {})()
        for child in widget.children:
            setattr(ui, child.name, child)
        return ui

    def confirmOkCancelDisplay(self, text, windowTitle=None, **kwargs):
        self.confirmations.append(text)
        return self.confirm_answer

    def errorDisplay(self, text, windowTitle=None, **kwargs):
        self.errors.append(text)

    def warningDisplay(self, text, windowTitle=None, **kwargs):
        self.warnings.append(text)

    @staticmethod
    def pip_install(requirements):
        raise AssertionError(f"unexpected pip install of {requirements!r}")

    def createProgressDialog(self, *args, **kwargs):
        self.progress_dialogs.append(ProgressDialog(*args, **kwargs))
        return self.progress_dialogs[-1]

    def load_module(self, name: str):
        """Import a module file (FemurUNet or FemurUNetTrain) the way Slicer does: by its file, as ``name``."""
        spec = importlib.util.spec_from_file_location(name, MODULE_FILES[name])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    def load_effect(self):
        """The Segment Editor effect as Slicer makes it: its file's SegmentEditorEffect class on a scripted effect
        (``effect.scriptedEffect`` is a ScriptedEffect), with its parameter defaults set."""
        spec = importlib.util.spec_from_file_location("SegmentEditorEffect", EFFECT_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        effect = module.SegmentEditorEffect(ScriptedEffect())
        effect.setMRMLDefaults()
        return effect


class _Patcher:
    """monkeypatch's setitem/setattr/syspath_prepend without the undo, for a process of its own."""

    @staticmethod
    def syspath_prepend(path):
        sys.path.insert(0, str(path))

    @staticmethod
    def setitem(mapping, key, value):
        mapping[key] = value

    @staticmethod
    def setattr(target, name, value, raising=True):
        setattr(target, name, value)


def install(patch=None) -> FakeApp:
    """Put the fake application in place (``patch``: pytest's monkeypatch, undone after the test; None: for good)."""
    import slicer
    import slicer.util
    patch = patch or _Patcher()
    app = FakeApp()
    for name in MODULE_FILES:   # loaded afresh by app.load_module; sys.modules is restored after the test
        patch.setitem(sys.modules, name, sys.modules.get(name))
        del sys.modules[name]
    if str(MODULE_FOLDER) not in sys.path:
        patch.syspath_prepend(str(MODULE_FOLDER))
    patch.setitem(sys.modules, "qt", app.qt)
    effects = types.ModuleType("SegmentEditorEffects")
    effects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    patch.setitem(sys.modules, "SegmentEditorEffects", effects)
    patch.setitem(sys.modules, "ctk", types.ModuleType("ctk"))
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(slm, cls.__name__, cls)
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper, pnw.Choice, pnw.WithinRange = parameterNodeWrapper, Choice, WithinRange
    patch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    patch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    patch.setattr(slicer, "ScriptedLoadableModule", slm, raising=False)
    patch.setattr(slicer, "parameterNodeWrapper", pnw, raising=False)
    patch.setattr(slicer, "app", app, raising=False)
    patch.setattr(slicer, "mrmlScene", app.mrmlScene, raising=False)
    plots = types.SimpleNamespace(logic=lambda: types.SimpleNamespace(ShowChartInLayout=app.charts_shown.append))
    patch.setattr(slicer, "modules", types.SimpleNamespace(plots=plots), raising=False)
    patch.setattr(slicer, "qSlicerSegmentEditorAbstractEffect",
                  types.SimpleNamespace(ModificationModeSet=0, ModificationModeAdd=1, ModificationModeRemove=2),
                  raising=False)
    for name in ("loadUI", "childWidgetVariables", "confirmOkCancelDisplay", "errorDisplay", "warningDisplay",
                 "pip_install", "createProgressDialog"):
        patch.setattr(slicer.util, name, getattr(app, name))
    patch.setattr(slicer.util, "mainWindow", lambda: None)
    patch.setattr(slicer.util, "delayDisplay", lambda *args, **kwargs: None)
    patch.setattr(slicer.util, "setSliceViewerLayers", lambda *args, **kwargs: None)
    patch.setattr(slicer.util, "selectModule", lambda name: None)
    return app


__all__ = ["install", "FakeApp", "ScriptedEffect", "parameter_node_connections", "name_filters_to_regexp"]
