export * from "./gen/kiln/v1/dataset_pb.js";
