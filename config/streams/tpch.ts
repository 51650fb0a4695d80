import typia, { type tags } from "typia";
import { lineColumns, lineParser, type LineLayout } from "../../src/shared/line-fields";
import { defineStream } from "../../src/shared/stream-definition";

/**
 * TPC-H tables fed by pipe-delimited lines, routed by prefix: `O|` orders, `L|` lineitem, `C|` customer,
 * `P|` part. Decimals stay strings end to end so no cent is lost to floating point.
 */

type Key = number & tags.Type<"int64"> & tags.Minimum<1>;
type SmallInt = number & tags.Type<"int32">;
type Decimal = string & tags.Pattern<"^-?[0-9]{1,13}(\\.[0-9]{1,2})?$">;
type Day = string & tags.Format<"date">;
type Text<N extends number> = string & tags.MaxLength<N>;

export interface OrderRecord {
  o_orderkey: Key;
  o_custkey: Key;
  o_orderstatus: Text<1> & tags.MinLength<1>;
  o_totalprice: Decimal;
  o_orderdate: Day;
  o_orderpriority: Text<15>;
  o_clerk: Text<15>;
  o_shippriority: SmallInt;
  o_comment: Text<79>;
}

export interface LineItemRecord {
  l_orderkey: Key;
  l_partkey: Key;
  l_suppkey: Key;
  l_linenumber: SmallInt & tags.Minimum<1>;
  l_quantity: Decimal;
  l_extendedprice: Decimal;
  l_discount: Decimal;
  l_tax: Decimal;
  l_returnflag: Text<1> & tags.MinLength<1>;
  l_linestatus: Text<1> & tags.MinLength<1>;
  l_shipdate: Day;
  l_commitdate: Day;
  l_receiptdate: Day;
  l_shipinstruct: Text<25>;
  l_shipmode: Text<10>;
  l_comment: Text<44>;
}

export interface CustomerRecord {
  c_custkey: Key;
  c_name: Text<25>;
  c_address: Text<40>;
  c_nationkey: SmallInt & tags.Minimum<0>;
  c_phone: Text<15>;
  c_acctbal: Decimal;
  c_mktsegment: Text<10>;
  c_comment: Text<117>;
}

export interface PartRecord {
  p_partkey: Key;
  p_name: Text<55>;
  p_mfgr: Text<25>;
  p_brand: Text<10>;
  p_type: Text<25>;
  p_size: SmallInt;
  p_container: Text<10>;
  p_retailprice: Decimal;
  p_comment: Text<23>;
}

const ORDERS_LINE: LineLayout = {
  prefix: "O",
  fields: [
    ["o_orderkey", "key"],
    ["o_custkey", "key"],
    ["o_orderstatus", "text"],
    ["o_totalprice", "decimal"],
    ["o_orderdate", "date"],
    ["o_orderpriority", "text"],
    ["o_clerk", "text"],
    ["o_shippriority", "int"],
    ["o_comment", "text"],
  ],
};

const LINEITEM_LINE: LineLayout = {
  prefix: "L",
  fields: [
    ["l_orderkey", "key"],
    ["l_partkey", "key"],
    ["l_suppkey", "key"],
    ["l_linenumber", "int"],
    ["l_quantity", "decimal"],
    ["l_extendedprice", "decimal"],
    ["l_discount", "decimal"],
    ["l_tax", "decimal"],
    ["l_returnflag", "text"],
    ["l_linestatus", "text"],
    ["l_shipdate", "date"],
    ["l_commitdate", "date"],
    ["l_receiptdate", "date"],
    ["l_shipinstruct", "text"],
    ["l_shipmode", "text"],
    ["l_comment", "text"],
  ],
};

const CUSTOMER_LINE: LineLayout = {
  prefix: "C",
  fields: [
    ["c_custkey", "key"],
    ["c_name", "text"],
    ["c_address", "text"],
    ["c_nationkey", "int"],
    ["c_phone", "text"],
    ["c_acctbal", "decimal"],
    ["c_mktsegment", "text"],
    ["c_comment", "text"],
  ],
};

const PART_LINE: LineLayout = {
  prefix: "P",
  fields: [
    ["p_partkey", "key"],
    ["p_name", "text"],
    ["p_mfgr", "text"],
    ["p_brand", "text"],
    ["p_type", "text"],
    ["p_size", "int"],
    ["p_container", "text"],
    ["p_retailprice", "decimal"],
    ["p_comment", "text"],
  ],
};

export const orders = defineStream<OrderRecord>({
  name: "orders",
  table: "orders",
  entity: "Order",
  description: "TPC-H orders (lines `O|...`)",
  formats: ["text"],
  linePrefix: "O",
  parseLine: lineParser(ORDERS_LINE),
  validate: typia.createValidateEquals<OrderRecord>(),
  schema: typia.json.schemas<[OrderRecord], "3.1">(),
  recordId: (r) => r.o_orderkey,
  columns: lineColumns(ORDERS_LINE),
  primaryKey: ["o_orderkey"],
  indexes: [],
  partitioned: false,
});

export const lineitem = defineStream<LineItemRecord>({
  name: "lineitem",
  table: "lineitem",
  entity: "LineItem",
  description: "TPC-H line items (lines `L|...`), each referencing an order",
  formats: ["text"],
  linePrefix: "L",
  parseLine: lineParser(LINEITEM_LINE),
  validate: typia.createValidateEquals<LineItemRecord>(),
  schema: typia.json.schemas<[LineItemRecord], "3.1">(),
  recordId: (r) => `${r.l_orderkey}-${r.l_linenumber}`,
  columns: lineColumns(LINEITEM_LINE),
  primaryKey: ["l_orderkey", "l_linenumber"],
  foreignKeys: [{ columns: ["l_orderkey"], references: { stream: "orders", columns: ["o_orderkey"] } }],
  indexes: [],
  partitioned: false,
});

export const customer = defineStream<CustomerRecord>({
  name: "customer",
  table: "customer",
  entity: "Customer",
  description: "TPC-H customers (lines `C|...`)",
  formats: ["text"],
  linePrefix: "C",
  parseLine: lineParser(CUSTOMER_LINE),
  validate: typia.createValidateEquals<CustomerRecord>(),
  schema: typia.json.schemas<[CustomerRecord], "3.1">(),
  recordId: (r) => r.c_custkey,
  columns: lineColumns(CUSTOMER_LINE),
  primaryKey: ["c_custkey"],
  indexes: [],
  partitioned: false,
});

export const part = defineStream<PartRecord>({
  name: "part",
  table: "part",
  entity: "Part",
  description: "TPC-H parts (lines `P|...`)",
  formats: ["text"],
  linePrefix: "P",
  parseLine: lineParser(PART_LINE),
  validate: typia.createValidateEquals<PartRecord>(),
  schema: typia.json.schemas<[PartRecord], "3.1">(),
  recordId: (r) => r.p_partkey,
  columns: lineColumns(PART_LINE),
  primaryKey: ["p_partkey"],
  indexes: [],
  partitioned: false,
});
