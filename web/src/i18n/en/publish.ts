export const publish = {
};
