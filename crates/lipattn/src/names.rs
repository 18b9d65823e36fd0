//! Options that take one of a few names (`method = "exact"`). Each such enum is declared once
//! with [`named_enum!`], which gives it its names, parsing, printing and serde; the frontends
//! list the names from [`Named::NAMES`] (the CLI's help and value parser) instead of keeping a
//! mapping of their own.

/// An enum whose values are written as names.
pub trait Named: Sized + Copy + 'static {
    /// The option's name, as a request field (for messages).
    const OPTION: &'static str;
    /// Every accepted name with its value; the first name of a value is its canonical one.
    const NAMES: &'static [(&'static str, Self)];
    fn name(self) -> &'static str;
}

/// Declares `enum $name { $variant, ... }` with its names ("canonical", then aliases), `FromStr`
/// (an unknown name is an [`crate::Error::Option`] listing the canonical names), `Display`,
/// serde as the canonical name, and [`Named`].
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident as $option:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $canon:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// The canonical name.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $canon ),+
                }
            }
        }

        impl $crate::names::Named for $name {
            const OPTION: &'static str = $option;
            const NAMES: &'static [(&'static str, Self)] =
                &[$( ($canon, $name::$variant) $(, ($alias, $name::$variant))* ),+];
            fn name(self) -> &'static str {
                $name::name(self)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::Error;
            fn from_str(s: &str) -> $crate::Result<Self> {
                use $crate::names::Named;
                Self::NAMES
                    .iter()
                    .find(|(n, _)| *n == s)
                    .map(|(_, v)| *v)
                    .ok_or_else(|| $crate::error::unknown_name($option, s, &[$($canon),+]))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($crate::names::Named::name(*self))
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str($crate::names::Named::name(*self))
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let s = <::std::string::String as ::serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
}
