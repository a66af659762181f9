//! The profile file as serde reads it: OCI runtime-spec `linux.seccomp` plus Docker's
//! extensions (`archMap`, `includes`/`excludes`, a single `name`).
//!
//! Only the shape is checked here, by serde, which names the line of a value of the
//! wrong type. Every field is optional, and actions, operators and architectures
//! are plain strings, so that [`super::profile`] can say which one is missing or
//! unknown and where (`syscalls[3].action`). Absent and `null` are the same (Docker
//! writes `"args": null`); keys kiln does not read (`minKernel`, `comment`, ...)
//! are ignored, as OCI runtimes ignore them.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use serde::de::{value::MapAccessDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The whole file.
pub(super) type File = Object<ProfileFile>;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ProfileFile {
    pub default_action: Option<String>,
    pub default_errno_ret: Option<u64>,
    pub architectures: Option<Vec<String>>,
    pub arch_map: Option<Vec<Object<ArchMap>>>,
    pub flags: Option<Vec<String>>,
    pub syscalls: Option<Vec<Object<Syscall>>>,
}

/// Docker's `archMap`: a main architecture and its compat ones.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ArchMap {
    pub architecture: Option<String>,
    pub sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Syscall {
    pub names: Option<Vec<String>>,
    /// The single name of Docker's older format.
    pub name: Option<String>,
    pub action: Option<String>,
    pub errno_ret: Option<u64>,
    pub args: Option<Vec<Object<Arg>>>,
    pub includes: Option<Object<Conditions>>,
    pub excludes: Option<Object<Conditions>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Arg {
    pub index: Option<u64>,
    pub value: Option<u64>,
    pub value_two: Option<u64>,
    pub op: Option<String>,
}

/// Docker's `includes`/`excludes`.
#[derive(Debug, Deserialize)]
pub(super) struct Conditions {
    pub caps: Option<Vec<String>>,
    pub arches: Option<Vec<String>>,
}

/// A JSON object read as `T`. serde's derived structs also take a JSON array of
/// their fields in order, which would let `["SCMP_ACT_ALLOW"]` pass for a profile;
/// profiles are objects only, as in runc and Docker.
#[derive(Debug)]
pub(super) struct Object<T>(pub T);

impl<T> Deref for Object<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        d.deserialize_map(Fields(PhantomData)).map(Object)
    }
}
