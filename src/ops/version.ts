/** The package's version, read once (health, metrics, OpenAPI, `ingestd --version`). */
export const VERSION: string = require("../../../package.json").version;
