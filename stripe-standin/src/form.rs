//! Stripe's form encoding: `a[b][0][c]=v` bracket keys parsed into nested JSON.
//!
//! Stripe (and async-stripe, through `serde_qs`) send request bodies and list queries as
//! `application/x-www-form-urlencoded` pairs whose keys carry a path in brackets:
//! `metadata[customer]=x`, `line_items[0][price]=p`, `expand[]=a`. Every leaf stays a JSON
//! string, as Stripe receives it; handlers convert the few numbers and booleans they use.

use serde_json::{Map, Value};

/// Keys deeper than this are refused; Stripe's own parameters nest at most five levels.
pub const KEY_DEPTH_MAX: usize = 8;

/// An array index above this is refused, so `a[4000000000]=x` cannot make a huge array.
pub const ARRAY_INDEX_MAX: usize = 1000;

/// Why a form could not be parsed; answered as Stripe's `invalid_request_error`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    /// A key such as `a[b` or `a]b`.
    #[error("invalid parameter name `{0}`")]
    BadKey(String),
    /// The same key is an object in one pair and a value in another.
    #[error("parameter `{0}` is given both as a value and as an object")]
    Conflict(String),
    /// Too deep or too large an index.
    #[error("parameter `{0}` exceeds the stand-in's limits")]
    TooLarge(String),
}

/// Parses a urlencoded body or query into a JSON object (empty input gives `{}`).
pub fn parse(input: &[u8]) -> Result<Value, FormError> {
    let mut root = Node::Map(Vec::new());
    for (key, value) in form_urlencoded::parse(input) {
        let path = split_key(&key)?;
        insert(&mut root, &path, value.into_owned(), &key)?;
    }
    Ok(root.into_json())
}

/// One parsed segment of `a[b][0][]`.
fn split_key(key: &str) -> Result<Vec<String>, FormError> {
    let bad = || FormError::BadKey(key.to_owned());
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    if head.is_empty() || head.contains(']') {
        return Err(bad());
    }
    let mut path = vec![head.to_owned()];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(bad)?;
        let end = inner.find(']').ok_or_else(bad)?;
        let segment = &inner[..end];
        if segment.contains('[') {
            return Err(bad());
        }
        path.push(segment.to_owned());
        rest = &inner[end + 1..];
        if path.len() > KEY_DEPTH_MAX {
            return Err(FormError::TooLarge(key.to_owned()));
        }
    }
    Ok(path)
}

/// The parse tree before arrays are recognised: keys keep their order of arrival.
enum Node {
    Leaf(String),
    Map(Vec<(String, Node)>),
}

fn insert(node: &mut Node, path: &[String], value: String, key: &str) -> Result<(), FormError> {
    let Node::Map(entries) = node else {
        return Err(FormError::Conflict(key.to_owned()));
    };
    let Some((first, rest)) = path.split_first() else {
        return Err(FormError::BadKey(key.to_owned()));
    };
    if let Ok(index) = first.parse::<usize>()
        && index > ARRAY_INDEX_MAX
    {
        return Err(FormError::TooLarge(key.to_owned()));
    }
    if rest.is_empty() {
        // `a[]=x` always appends; a repeated plain key keeps the last value, as Stripe does.
        if first.is_empty() {
            entries.push((String::new(), Node::Leaf(value)));
            return Ok(());
        }
        match entries.iter_mut().find(|(k, _)| k == first) {
            Some((_, Node::Leaf(old))) => *old = value,
            Some((_, Node::Map(_))) => return Err(FormError::Conflict(key.to_owned())),
            None => entries.push((first.clone(), Node::Leaf(value))),
        }
        return Ok(());
    }
    let position = if first.is_empty() {
        None
    } else {
        entries.iter().position(|(k, _)| k == first)
    };
    let child = match position {
        Some(i) => &mut entries[i].1,
        None => {
            entries.push((first.clone(), Node::Map(Vec::new())));
            let last = entries.len() - 1;
            &mut entries[last].1
        }
    };
    insert(child, rest, value, key)
}

impl Node {
    fn into_json(self) -> Value {
        match self {
            Node::Leaf(s) => Value::String(s),
            Node::Map(entries) => {
                let is_array = !entries.is_empty()
                    && entries
                        .iter()
                        .all(|(k, _)| k.is_empty() || k.parse::<usize>().is_ok());
                if is_array {
                    // Indexed entries in index order, then `[]` entries in arrival order.
                    let mut indexed: Vec<(usize, usize, Node)> = entries
                        .into_iter()
                        .enumerate()
                        .map(|(arrival, (k, v))| (k.parse().unwrap_or(usize::MAX), arrival, v))
                        .collect();
                    indexed.sort_by_key(|(index, arrival, _)| (*index, *arrival));
                    Value::Array(indexed.into_iter().map(|(_, _, v)| v.into_json()).collect())
                } else {
                    let mut map = Map::new();
                    for (k, v) in entries {
                        map.insert(k, v.into_json());
                    }
                    Value::Object(map)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn brackets_become_nested_objects_and_arrays() {
        let body = b"email=a%40example.com&metadata[customer]=c1&line_items[0][price]=p&\
line_items[0][quantity]=1&line_items[1][price]=q&expand[]=a&expand[]=b&lookup_keys[1]=y&lookup_keys[0]=x";
        assert_eq!(
            parse(body).expect("valid form"),
            json!({
                "email": "a@example.com",
                "metadata": {"customer": "c1"},
                "line_items": [{"price": "p", "quantity": "1"}, {"price": "q"}],
                "expand": ["a", "b"],
                "lookup_keys": ["x", "y"],
            })
        );
    }

    #[test]
    fn percent_encoded_brackets_are_understood() {
        assert_eq!(
            parse(b"metadata%5Bk%5D=v&customer_update%5Baddress%5D=auto").expect("valid"),
            json!({"metadata": {"k": "v"}, "customer_update": {"address": "auto"}})
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(matches!(parse(b"a[b=1"), Err(FormError::BadKey(_))));
        assert!(matches!(parse(b"[a]=1"), Err(FormError::BadKey(_))));
        assert!(matches!(parse(b"a=1&a[b]=2"), Err(FormError::Conflict(_))));
        assert!(matches!(
            parse(b"a[99999999]=1"),
            Err(FormError::TooLarge(_))
        ));
        assert!(matches!(
            parse(b"a[1][2][3][4][5][6][7][8]=1"),
            Err(FormError::TooLarge(_))
        ));
    }

    #[test]
    fn empty_input_is_an_empty_object() {
        assert_eq!(parse(b"").expect("valid"), json!({}));
    }
}
