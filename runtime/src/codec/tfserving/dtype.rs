//! TF `DataType` ↔ V2 datatypes: the `DT_*` names and enum numbers of
//! `tensorflow/core/framework/types.proto`, and TF's own short names
//! (`DataTypeString`) that its error texts use. Exact both ways: a TF type
//! with no V2 counterpart (complex, quantized, resource, variant) has none.

use crate::tensor::DataType;

/// (V2 datatype, `DT_*` name, enum number, TF's short name).
const TABLE: [(DataType, &str, i32, &str); 14] = [
    (DataType::Fp32, "DT_FLOAT", 1, "float"),
    (DataType::Fp64, "DT_DOUBLE", 2, "double"),
    (DataType::Int32, "DT_INT32", 3, "int32"),
    (DataType::Uint8, "DT_UINT8", 4, "uint8"),
    (DataType::Int16, "DT_INT16", 5, "int16"),
    (DataType::Int8, "DT_INT8", 6, "int8"),
    (DataType::Bytes, "DT_STRING", 7, "string"),
    (DataType::Int64, "DT_INT64", 9, "int64"),
    (DataType::Bool, "DT_BOOL", 10, "bool"),
    (DataType::Bf16, "DT_BFLOAT16", 14, "bfloat16"),
    (DataType::Uint16, "DT_UINT16", 17, "uint16"),
    (DataType::Fp16, "DT_HALF", 19, "half"),
    (DataType::Uint32, "DT_UINT32", 22, "uint32"),
    (DataType::Uint64, "DT_UINT64", 23, "uint64"),
];

/// `DT_FLOAT` for FP32, ...
pub fn dt_name(dt: DataType) -> &'static str {
    TABLE.iter().find(|r| r.0 == dt).map(|r| r.1).expect("every V2 datatype has a TF type")
}

/// The `DataType` enum number TF's protos carry.
pub fn dt_number(dt: DataType) -> i32 {
    TABLE.iter().find(|r| r.0 == dt).map(|r| r.2).expect("every V2 datatype has a TF type")
}

/// TF's short name (`float`, `int64`, `string`), as in its error texts.
pub fn tf_type_name(dt: DataType) -> &'static str {
    TABLE.iter().find(|r| r.0 == dt).map(|r| r.3).expect("every V2 datatype has a TF type")
}

/// The V2 datatype of a `DT_*` name; `None` for types V2 cannot carry.
pub fn from_dt_name(name: &str) -> Option<DataType> {
    TABLE.iter().find(|r| r.1 == name).map(|r| r.0)
}

/// The V2 datatype of a TF enum number; `None` for types V2 cannot carry.
pub fn from_dt_number(n: i32) -> Option<DataType> {
    TABLE.iter().find(|r| r.2 == n).map(|r| r.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_v2_type_maps_both_ways() {
        for dt in DataType::ALL {
            assert_eq!(from_dt_name(dt_name(dt)), Some(dt));
            assert_eq!(from_dt_number(dt_number(dt)), Some(dt));
        }
        assert_eq!(from_dt_name("DT_COMPLEX64"), None);
        assert_eq!(from_dt_number(8), None);
    }
}
