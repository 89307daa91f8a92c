//! Arguments of remote calls: positional ([`IntoArgs`]) and keyword ([`IntoKwargs`]).

use std::collections::{BTreeMap, HashMap};

use rpyc_protocol::Value;

/// Positional arguments of a remote call.
///
/// Implemented for `()` (no arguments), tuples of up to eight elements that convert into
/// [`Value`] (including `&RemoteObject`), `Vec<T>`, `[T; N]` and `&[Value]`. A one-element
/// tuple needs its trailing comma: `obj.call((5,))`.
pub trait IntoArgs {
    /// The arguments as values, in order.
    fn into_args(self) -> Vec<Value>;
}

impl IntoArgs for () {
    fn into_args(self) -> Vec<Value> {
        Vec::new()
    }
}

impl<T: Into<Value>> IntoArgs for Vec<T> {
    fn into_args(self) -> Vec<Value> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<T: Into<Value>, const N: usize> IntoArgs for [T; N] {
    fn into_args(self) -> Vec<Value> {
        self.into_iter().map(Into::into).collect()
    }
}

impl IntoArgs for &[Value] {
    fn into_args(self) -> Vec<Value> {
        self.to_vec()
    }
}

macro_rules! args_tuple {
    ($($name:ident),+) => {
        impl<$($name: Into<Value>),+> IntoArgs for ($($name,)+) {
            #[allow(non_snake_case)]
            fn into_args(self) -> Vec<Value> {
                let ($($name,)+) = self;
                vec![$($name.into()),+]
            }
        }
    };
}
args_tuple!(A);
args_tuple!(A, B);
args_tuple!(A, B, C);
args_tuple!(A, B, C, D);
args_tuple!(A, B, C, D, E);
args_tuple!(A, B, C, D, E, F);
args_tuple!(A, B, C, D, E, F, G);
args_tuple!(A, B, C, D, E, F, G, H);

/// Keyword arguments of a remote call, in order.
///
/// Implemented for `()` (none), `Vec<(K, V)>`, `[(K, V); N]`, `&[(K, V)]` (cloned),
/// `HashMap<K, V>` and `BTreeMap<K, V>`, where `K` converts into a `String` and `V` into a
/// [`Value`]: `[("sep", "-")]`, `vec![("n".to_string(), Value::from(3))]`.
pub trait IntoKwargs {
    /// The keyword arguments as `(name, value)` pairs, in order.
    fn into_kwargs(self) -> Vec<(String, Value)>;
}

impl IntoKwargs for () {
    fn into_kwargs(self) -> Vec<(String, Value)> {
        Vec::new()
    }
}

impl<K: Into<String>, V: Into<Value>> IntoKwargs for Vec<(K, V)> {
    fn into_kwargs(self) -> Vec<(String, Value)> {
        self.into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }
}

impl<K: Into<String>, V: Into<Value>, const N: usize> IntoKwargs for [(K, V); N] {
    fn into_kwargs(self) -> Vec<(String, Value)> {
        self.into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }
}

impl<K: AsRef<str>, V: Clone + Into<Value>> IntoKwargs for &[(K, V)] {
    fn into_kwargs(self) -> Vec<(String, Value)> {
        self.iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.clone().into()))
            .collect()
    }
}

impl<K: Into<String>, V: Into<Value>, S> IntoKwargs for HashMap<K, V, S> {
    fn into_kwargs(self) -> Vec<(String, Value)> {
        self.into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }
}

impl<K: Into<String>, V: Into<Value>> IntoKwargs for BTreeMap<K, V> {
    fn into_kwargs(self) -> Vec<(String, Value)> {
        self.into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_convert() {
        assert!(().into_args().is_empty());
        assert_eq!((5,).into_args(), vec![Value::Int(5)]);
        assert_eq!(
            (1, "a", 2.5, true, (), 'c', 7u8, None::<i32>)
                .into_args()
                .len(),
            8
        );
        assert_eq!(vec![1, 2].into_args(), vec![Value::Int(1), Value::Int(2)]);
        assert_eq!(["x"].into_args(), vec![Value::from("x")]);
        let slice: &[Value] = &[Value::None];
        assert_eq!(slice.into_args(), vec![Value::None]);
    }

    #[test]
    fn kwargs_convert() {
        let expected = vec![("sep".to_owned(), Value::from("-"))];
        assert_eq!([("sep", "-")].into_kwargs(), expected);
        assert_eq!(vec![("sep".to_owned(), "-")].into_kwargs(), expected);
        let pairs: &[(&str, Value)] = &[("sep", Value::from("-"))];
        assert_eq!(pairs.into_kwargs(), expected);
        let map: HashMap<String, Value> = HashMap::from([("sep".to_owned(), Value::from("-"))]);
        assert_eq!(map.into_kwargs(), expected);
        assert!(().into_kwargs().is_empty());
    }
}
