//! Items of a FHIRPath collection.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

/// One step of a [`Node`]'s position inside the evaluated resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSegment {
    /// An object member, by its JSON key (e.g. `valueQuantity`, not `value`).
    Key(String),
    /// An array element.
    Index(usize),
}

/// Position of a node inside the input document, as a parent-linked list so
/// that deriving a child location is one small allocation rather than a copy
/// of the whole path.
#[derive(Debug)]
pub(crate) enum Loc<'a> {
    Root,
    Key(Arc<Loc<'a>>, &'a str),
    Index(Arc<Loc<'a>>, usize),
}

impl Loc<'_> {
    pub(crate) fn segments(&self) -> Vec<PathSegment> {
        let mut out = Vec::new();
        let mut cur = self;
        loop {
            match cur {
                Loc::Root => break,
                Loc::Key(parent, key) => {
                    out.push(PathSegment::Key((*key).to_string()));
                    cur = parent;
                }
                Loc::Index(parent, i) => {
                    out.push(PathSegment::Index(*i));
                    cur = parent;
                }
            }
        }
        out.reverse();
        out
    }
}

/// An item of a FHIRPath result collection.
///
/// Items taken from the evaluated resource borrow from it and know where they
/// sit in it ([`Node::path`]); computed items (booleans, literals, the
/// placeholder resources produced by `resolve()`) are owned and have no path.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub(crate) value: Cow<'a, Value>,
    pub(crate) type_name: Option<Cow<'a, str>>,
    pub(crate) loc: Option<Arc<Loc<'a>>>,
    /// For primitives: the matching `_name` JSON object holding `id`/`extension`.
    pub(crate) primitive_ext: Option<&'a Value>,
    /// True when the node was reached through a choice key such as
    /// `valueQuantity` via the element name `value`.
    pub(crate) choice: bool,
}

impl<'a> Node<'a> {
    pub(crate) fn root(value: &'a Value) -> Node<'a> {
        Node {
            type_name: resource_type(value).map(Cow::Borrowed),
            value: Cow::Borrowed(value),
            loc: Some(Arc::new(Loc::Root)),
            primitive_ext: None,
            choice: false,
        }
    }

    pub(crate) fn computed(value: Value, type_name: Option<&'static str>) -> Node<'a> {
        Node {
            value: Cow::Owned(value),
            type_name: type_name.map(Cow::Borrowed),
            loc: None,
            primitive_ext: None,
            choice: false,
        }
    }

    pub(crate) fn boolean(b: bool) -> Node<'a> {
        Node::computed(Value::Bool(b), Some("boolean"))
    }

    /// The JSON value of this item. For a choice element this is the value
    /// under the typed key (the object under `valueQuantity`, not a wrapper).
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The value if it is borrowed from the evaluated resource.
    pub fn borrowed(&self) -> Option<&'a Value> {
        match self.value {
            Cow::Borrowed(v) => Some(v),
            Cow::Owned(_) => None,
        }
    }

    /// Consumes the node, returning its value.
    pub fn into_value(self) -> Cow<'a, Value> {
        self.value
    }

    /// The FHIR type name when known: the resource type for resources, the
    /// type of a choice element (`Quantity`, `dateTime`, …), `boolean`/`string`/
    /// `integer`/`decimal` for computed values. `None` for plain elements,
    /// whose type would need StructureDefinitions to know.
    pub fn type_name(&self) -> Option<&str> {
        self.type_name.as_deref()
    }

    /// The `_name` companion object of a primitive (its `id`/`extension`), if any.
    pub fn primitive_extension(&self) -> Option<&'a Value> {
        self.primitive_ext
    }

    /// Position of the item inside the evaluated resource (empty for the
    /// resource itself); `None` for computed items.
    pub fn path(&self) -> Option<Vec<PathSegment>> {
        self.loc.as_ref().map(|l| l.segments())
    }
}

pub(crate) fn resource_type(value: &Value) -> Option<&str> {
    value.get("resourceType").and_then(Value::as_str)
}
